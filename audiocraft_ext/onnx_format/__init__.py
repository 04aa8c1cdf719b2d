"""``output.onnx=true``: a MusicGen release's transformers half exported to ONNX, in the layout
Optimum and Transformers.js read (``onnx/``), and proven with ONNX Runtime."""
