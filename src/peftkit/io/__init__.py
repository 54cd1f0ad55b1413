"""Reading and writing PEFT-format adapter directories."""
