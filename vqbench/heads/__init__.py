"""The heads and their contract: the OutputHead contract, the registry and spec strings, VQ-Logits and its
mappings, token frequencies, and the padding and fresh-output helpers the heads share.
"""
