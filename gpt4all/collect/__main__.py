from gpt4all.collect.app import main

main()
