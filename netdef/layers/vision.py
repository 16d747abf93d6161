"""(vision family: being written)"""
