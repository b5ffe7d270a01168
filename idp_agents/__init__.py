"""Planners (VIN, ConvGPPN, SymVIN; unrolled or implicit), learned mappers and the imitation command."""
