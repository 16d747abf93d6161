"""(dense family: being written)"""
