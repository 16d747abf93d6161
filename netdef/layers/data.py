"""(data family: being written)"""
