"""One module per DVC stage (named as in dvc.yaml), each a thin ``main()``: parse params, call, write outputs."""
