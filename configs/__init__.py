"""The shipped fine-tuning configs (`research finetune --config configs/NAME.py`); installed as
`research.configs` (see research/resources.py)."""
