from idp_agents.experiments.cli import main

main()
