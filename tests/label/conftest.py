"""MONAI Label tests run only in a venv with ``monailabel`` installed (``pip install -e ".[label]"``).

The main test venv has no MONAI Label: the modules here skip themselves with a reason there.
"""
