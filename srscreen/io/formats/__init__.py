"""One parser per structure file format; `io.readers` picks one by the file name."""
