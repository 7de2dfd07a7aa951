"""Public path of the NumPy backprop oracle; the implementation lives in repro.grad.backprop."""
from repro.grad.backprop import ACTIVATIONS, LOSSES, MLPArch, backprop, forward, loss_value, mlp_loss

__all__ = ["ACTIVATIONS", "LOSSES", "MLPArch", "forward", "loss_value", "backprop", "mlp_loss"]
