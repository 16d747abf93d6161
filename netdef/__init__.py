"""netdef: Caffe-style prototxt networks, compiled and run on the CPU."""
__version__ = "0.1.0"
