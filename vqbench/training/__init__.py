"""Measuring quality: corpora and vocabularies, the LSTM and GPT bodies, evaluation, the learned VQ mapping
and the map search.
"""
