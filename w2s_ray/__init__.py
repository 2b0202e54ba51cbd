"""w2s-ray: weak-to-strong generalization experiments on Ray (Train, Data, Tune)."""

__version__ = "0.1.0"
