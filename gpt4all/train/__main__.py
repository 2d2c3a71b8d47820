from gpt4all.train.app import main

main()
