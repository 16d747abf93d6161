"""(normalization family: being written)"""
