"""Speed and memory benchmarks of the detector against torchvision: tools, run as ``python -m benchmarks``."""
