"""Parts of ``bench/explora_eval.py``: data specs, pre-training runs, probe and fine-tune rows, statistics, report."""
