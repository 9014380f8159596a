"""Meta-learning of representations for continual learning (OML and MAML-Rep, Javed & White 2019)."""
