"""The model pipeline: convert to OpenVINO IR, quantize with NNCF, embed, benchmark."""
