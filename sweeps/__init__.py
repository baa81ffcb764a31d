"""Paper ablations as Ray Tune sweeps of Ray Train (DDP) runs of ``detector.engine``, recorded
in MLflow and parquet. Scripts: gamma_alpha.py, anchor_density.py, speed_accuracy.py; the
library: sweep.py (declaration + entry point) and the engine modules it lists."""

from detector.ray_launch import set_ray_env as _set_ray_env

# Read by Ray and Tune at import time, so set before anything imports ray (the values and why:
# detector.ray_launch, the one place they are written).
_set_ray_env(tune=True)
