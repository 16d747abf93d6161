"""(neuron family: being written)"""
