"""qfleet: quantize a face-recognition model per CPU ISA tier, gate it on LFW, and size the fleet."""

__version__ = "0.1.0"
