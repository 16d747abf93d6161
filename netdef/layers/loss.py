"""(loss family: being written)"""
