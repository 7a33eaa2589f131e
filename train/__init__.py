"""qvit.train"""
