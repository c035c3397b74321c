"""Training the models: the reference target, EAGLE-3 drafters, distillation, recipes, the reference and demo pairs, DynaSpec's router."""
