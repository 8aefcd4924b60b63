"""Evaluation: CLIP / DINO encoders (embedded tiny evaluators or pretrained), CLIP score, objective proxies."""
