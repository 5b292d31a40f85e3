"""ebt_policy.deploy"""
