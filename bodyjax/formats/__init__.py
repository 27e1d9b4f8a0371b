"""Readers and writers of the file formats users bring: SMPL model files, DensePose's UV table.

Layer: orchestration (files in, validated arrays out; every error names the file and the field).
"""
