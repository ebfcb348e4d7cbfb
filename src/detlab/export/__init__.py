"""Export to ONNX (:mod:`detlab.export.onnx_export`, needs torch) and inference from the exported
file with onnxruntime, numpy and Pillow only (:mod:`detlab.export.runtime`). Importing this
package imports neither."""
