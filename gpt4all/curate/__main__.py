from gpt4all.curate.app import main

main()
