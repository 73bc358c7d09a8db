"""Demo: visualise a Mask2Former model's predictions (see demo/demo.py)."""
