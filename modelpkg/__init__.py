"""The model-package format every side of modelship shares: training writes it, the pipeline checks and
scores it, the serving app verifies it before it answers a request.

    modelpkg.manifest   model.json: write, read, verify (the sha256 of every file), the version's identity
    modelpkg.evaluate   accuracy on the fixed held-out split, measured on the exported ONNX file
    modelpkg.dataset    the digits data set and its fixed train/held-out split (shipped, numpy only)
    modelpkg.atomic     stage-then-rename for folders and files: readers never see half of anything

Dependencies: the standard library; numpy and onnxruntime for dataset/evaluate only (the serving image has
both). Importing the package itself imports neither.
"""
