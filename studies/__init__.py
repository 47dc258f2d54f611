"""Studies that need the exported ONNX file, so they sit above ``export`` (which sits above
``training``): ``python -m studies bn-test-time ...``. Their report sections read their run
directories alone and live in ``training`` (``training.inference_report``), registered in
``training.experiments`` by command name."""
