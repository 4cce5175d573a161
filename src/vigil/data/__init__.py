"""vigil.data"""
