import sys
from pathlib import Path

# blocks.py, the tiny data sets of the model tests, is imported by name.
sys.path.insert(0, str(Path(__file__).parent))
