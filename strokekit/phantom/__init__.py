"""The phantom: a synthetic head-CT data set in the competition's folder layouts (anatomy, drawing, lesions)."""
