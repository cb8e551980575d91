"""quantum"""
