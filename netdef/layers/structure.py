"""(structure family: being written)"""
