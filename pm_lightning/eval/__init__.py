"""Evaluation: CLIP / DINO encoders (embedded tiny evaluators or pretrained), CLIP score, objective proxies, the judge, the per-domain table."""
