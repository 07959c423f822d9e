"""NumPy references: one module per shader, same name, the ground truth the tests compare against."""
