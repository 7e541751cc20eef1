"""limbscan's speed and memory benchmarks, run as modules from the repository root::

    python -m benchmarks.inference --bundle model.limbscan --fracatlas ... --out benchmarks/results/inference.json

One module a benchmark (``inference``, ``train_speed``, ``ingest``, ``dicom_node``,
``detector_batching``); ``benchmarks.cv`` holds the analyses of ``limbscan cv`` folders.
What they share (memory from /proc, machine info, the JSON report, a measurement in a fresh
interpreter) is in ``benchmarks._common``. Their JSON lands in ``benchmarks/results/``.
"""
