"""Serving: the Open Inference Protocol server over an OpenVINO model, and the camera load generator.

- :mod:`qfleet.serving.protocol`: the v2 REST messages (JSON and binary tensors), pure.
- :mod:`qfleet.serving.engine`: the compiled model behind an AsyncInferQueue; the ISA guard.
- :mod:`qfleet.serving.server`: the aiohttp application, limits, graceful shutdown.
- :mod:`qfleet.serving.metrics`: the server's Prometheus metrics.
- :mod:`qfleet.serving.loadtest`: open-loop camera traffic and its report.
"""
