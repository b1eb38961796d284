const rt = globalThis.__k6;

const execution = {
  scenario: {
    get name() {
      return rt.vu.scenario;
    },
    get startTime() {
      return rt.vu.scenarioStartTime;
    },
    get iterationInTest() {
      return rt.vu.iterationInTest;
    },
  },
  vu: {
    get idInTest() {
      return rt.vu.idInTest;
    },
    get iterationInScenario() {
      return rt.vu.iterationInScenario;
    },
  },
};

export default execution;
