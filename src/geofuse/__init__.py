"""geofuse: multi-sensor fusion deep learning for Earth-observation imagery."""

__version__ = "0.1.0"
