"""The engine: the policy's bookkeeping (dataflow), the loop (scheduler), progress, and the Tune driver."""
