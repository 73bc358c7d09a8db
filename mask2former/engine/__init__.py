"""Training machinery shared by train_net.py, train_net_video.py, the demos and the tools."""
from .optimizer import build_optimizer  # noqa: F401
from .setup import (  # noqa: F401
    check_inputs,
    load_config,
    replace_sync_batch_norm,
    setup,
    setup_for_inference,
    use_cpu_without_cuda,
)
from .trainer import Trainer  # noqa: F401
