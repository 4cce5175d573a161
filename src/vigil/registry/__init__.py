"""vigil.registry"""
