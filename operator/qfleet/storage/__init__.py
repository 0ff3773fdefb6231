"""Where models and data live beyond a local disk: S3-compatible stores, HTTPS, PVC paths.

- :mod:`~qfleet.storage.uris`: parsing and checking ``s3://``, ``https://``, ``pvc://`` (pure).
- :mod:`~qfleet.storage.s3`: boto3 client from the standard AWS variables, errors as qfleet's.
- :mod:`~qfleet.storage.transfer`: streamed HTTPS and local copies, sha256 while streaming.
- :mod:`~qfleet.storage.publish`: a model directory to ``s3://``, ``qfleet.json`` last.
- :mod:`~qfleet.storage.fetch`: a model or file into a directory, verified (``qfleet fetch``).
- :mod:`~qfleet.storage.staging`: ``qfleet pipeline`` with ``s3://`` inputs and output.

boto3 is imported only when an ``s3://`` location is used.
"""
