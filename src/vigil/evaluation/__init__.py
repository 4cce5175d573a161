"""vigil.evaluation"""
