"""The decision pipeline: one module per stage, each one public function over a RequestContext.

validate -> (read: service) -> eligibility -> scoring -> arbitration -> exploration -> award
-> explain -> record; `service.DecisionService.decide` runs them in that order. A new stage is a
new module here and one line in `decide`; a new candidate filter belongs in `eligibility`,
which `nbo ope` uses too.
"""
